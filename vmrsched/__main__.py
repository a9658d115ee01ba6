import sys

from vmrsched.cli import main

sys.exit(main())
