import sys

from flair_cli import main

sys.exit(main())
