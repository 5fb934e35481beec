import sys

from spine_ui.cli import main

sys.exit(main())
