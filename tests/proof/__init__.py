"""Proof under load and Slack failures (issue 11): bounded tests of what a user would see."""
