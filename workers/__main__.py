import sys

from workers.runtime import main

sys.exit(main())
