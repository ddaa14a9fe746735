"""Rate limiting: what DialNexa's headers say, the pacer that follows them, the lanes' slots and
the campaign lane's admission."""
