"""One `pretrain-eval` promotion in its own process, as a flow run would do it, with the decision slowed down
so that two of them started together both read the registry before either writes:

    python -m tests.helpers.slow_promotion METHOD VERSION RUN_ID METRIC   # prints the decision as JSON
"""

import json
import sys
import time

from flair_lab import tracking
from flows import pretrain_eval


def main(method: str, version: str, run_id: str, metric: str) -> None:
    decide = tracking.decide

    def slow_decide(*args):
        time.sleep(1.5)
        return decide(*args)

    tracking.decide = slow_decide
    print(json.dumps(pretrain_eval.promote(method, version, run_id, metric, 2.0)))


if __name__ == "__main__":
    main(*sys.argv[1:])
