import sys

from services.stack import main

sys.exit(main())
