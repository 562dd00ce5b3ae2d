"""``python -m schemas``: print the worker's JSON Schema (draft 2020-12), built by pydantic.

By default the schema of a whole job, ``{"input": ...}`` (what test_input.json holds and /run takes),
with ``#/$defs/Input`` (``job["input"]``) and ``#/$defs/Output`` (what a job returns); every ``$ref``
resolves from the document's root, so validators such as ``jsonschema`` can use it as is.
"""

import argparse
import json
import sys

from schemas.job import json_schemas
from schemas.live import json_schemas as live_json_schemas


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m schemas", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: python -m schemas > worldplay.schema.json; "
               "python -m schemas --part input")
    parser.add_argument("--part", choices=["job", "input", "output", "live"], default="job",
                        help="job: a whole {\"input\": ...} job (default); input: job[\"input\"] "
                             "alone; output: a job's output alone; live: the live socket's "
                             "messages (WS /session, docs/LIVE.md)")
    args = parser.parse_args(argv)
    json.dump(live_json_schemas() if args.part == "live" else json_schemas(args.part), sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
