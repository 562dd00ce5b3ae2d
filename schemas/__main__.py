"""``python -m schemas``: print the input and output JSON Schemas as one JSON document."""

import json
import sys

from schemas.job import json_schemas


def main() -> int:
    json.dump(json_schemas(), sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
