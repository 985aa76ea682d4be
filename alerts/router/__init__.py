"""The chat router: alerts from the Redis stream to Feishu, DingTalk, WeCom, Slack, webhooks and apprise."""
