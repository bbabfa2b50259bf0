"""kubechat's chat service: one bot, its conversations, and the HTTP API in front of them."""

__version__ = "0.1.0"
