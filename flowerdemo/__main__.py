import sys

from flowerdemo.cli.main import main

sys.exit(main())
