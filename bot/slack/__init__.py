"""The Slack front door: Block Kit messages, modals and the App Home, built with slack_sdk."""
