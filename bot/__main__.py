"""``python -m bot``: the command line, as the ``clonebot`` script runs it."""

from bot.cli import main

main()
