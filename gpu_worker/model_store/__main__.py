"""`python -m gpu_worker.model_store digest PATH | push PATH s3://bucket/prefix/`."""

from __future__ import annotations

import sys

from gpu_worker.model_store.push import main

if __name__ == "__main__":
    sys.exit(main())
