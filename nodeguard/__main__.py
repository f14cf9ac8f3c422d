import sys

from nodeguard.cli.main import main

sys.exit(main())
