"""The usual Python production set-up for an Official Account: Flask and wechatpy, on gunicorn.

This is the `flask` row of `cargo bench --bench compare` (docs/benchmarks.md). It does the job
of wxmp's `plain` row the way wechatpy's own example app (examples/echo/app.py) does it: check
the signature (403 if it is wrong), parse the message, answer a text message with a fixed text
reply. Unlike wxmp it keeps no retry table and logs nothing per message (gunicorn's access log is
off by default).

The bench runs it as `gunicorn -w WORKERS flask_wechatpy:app` (gunicorn's default sync workers,
one process each) with WX_TOKEN and WX_REPLY set.
"""

import os

from flask import Flask, abort, request
from wechatpy import create_reply, parse_message
from wechatpy.exceptions import InvalidSignatureException
from wechatpy.utils import check_signature

TOKEN = os.environ["WX_TOKEN"]
REPLY = os.environ["WX_REPLY"]

app = Flask(__name__)


@app.route("/wx", methods=["GET", "POST"])
def wechat():
    args = request.args
    try:
        check_signature(
            TOKEN, args.get("signature", ""), args.get("timestamp", ""), args.get("nonce", "")
        )
    except InvalidSignatureException:
        abort(403)
    if request.method == "GET":
        return args.get("echostr", "")
    msg = parse_message(request.get_data())
    if msg.type == "text":
        return create_reply(REPLY, msg).render()
    return "success"


@app.route("/healthz")
def healthz():
    return "ok"
