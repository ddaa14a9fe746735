"""The DialNexa client (`client`), the HTTP plumbing under it (`http`), and the core's view of it
per lane (`gateway`)."""
