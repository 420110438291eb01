import sys

from clir.cli.main import main

sys.exit(main())
