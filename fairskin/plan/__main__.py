"""``python -m fairskin.plan``: the same command as ``python -m fairskin plan``."""

import sys

from fairskin.plan.cli import main

if __name__ == "__main__":
    sys.exit(main())
