"""``python -m service.evaluate``: the command line of the offline Pointing Game job.

The code lives in :mod:`service.evaluation.cli`; this module keeps the documented command name working.
"""

import sys

from service.evaluation.cli import main

if __name__ == "__main__":
    sys.exit(main())
