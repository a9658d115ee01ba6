import sys

from vmrsched.cli.main import main

sys.exit(main())
