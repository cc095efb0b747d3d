"""The usual Python hobby set-up for an Official Account: WeRoBot and its own `robot.run()`.

This is the `werobot` row of `cargo bench --bench compare` (docs/benchmarks.md). WeRoBot checks
the signature, parses the message and writes the reply; `robot.run()` serves it with bottle's
`auto` server, which with nothing else installed is Python's single-threaded wsgiref (and logs
every request to stderr), as WeRoBot's quick start leaves it.

The bench runs it as `python werobot_app.py` with WX_TOKEN, WX_REPLY and WX_LISTEN (host:port).
"""

import os

import werobot

robot = werobot.WeRoBot(token=os.environ["WX_TOKEN"])
REPLY = os.environ["WX_REPLY"]


@robot.text
def text(message):
    return REPLY


host, port = os.environ["WX_LISTEN"].rsplit(":", 1)
robot.run(host=host, port=int(port))
