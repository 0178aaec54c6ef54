import sys

from drrn.cli import main

sys.exit(main())
