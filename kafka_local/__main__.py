"""``python -m kafka_local``: fetch, run, start, stop or show the local broker."""

import sys

from kafka_local import main

sys.exit(main())
