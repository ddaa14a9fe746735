"""Print the JSON API base of the package index pip is configured with (for scripts/audit.sh).

PIP_INDEX_URL first, then pip's own configuration, then pip's default index; a PEP 503 `/simple`
URL becomes the `/pypi` JSON API beside it.
"""

import os
import subprocess
import sys

from pip._internal.models.index import PyPI


def main() -> None:
    url = os.environ.get("PIP_INDEX_URL", "")
    if not url:
        got = subprocess.run(  # this interpreter's own pip, fixed arguments
            [sys.executable, "-m", "pip", "config", "get", "global.index-url"],
            capture_output=True,
            text=True,
            check=False,
        )
        url = got.stdout.strip() if got.returncode == 0 else ""
    url = (url or PyPI.simple_url).rstrip("/")
    print(url.removesuffix("/simple") + "/pypi")


if __name__ == "__main__":
    main()
