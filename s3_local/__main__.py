"""``python -m s3_local``: fetch, run, start, stop or show the local S3 server."""

import sys

from s3_local import main

sys.exit(main())
