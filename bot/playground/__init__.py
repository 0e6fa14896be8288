"""The playground: ``clonebot serve`` without Slack tokens plays Slack for the same Bolt app.

``server`` serves the page, the Web API the bot calls (``api``), the page's requests turned
into signed Slack requests (``slack_side``) and the stream of what the bot did (``feed``).
"""
