"""The Zoho Desk protocol: pull and push endpoints, channelState, the sync format."""
