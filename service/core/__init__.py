"""The pure core: event models (`events`), the ports it owns (`ports`), what it decides
(`outcomes`) and how (`handle`). It imports nothing of the broker, aiohttp or the DialNexa client."""
