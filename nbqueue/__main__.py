import sys

from nbqueue.cli import main

sys.exit(main())
