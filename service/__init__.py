"""workflow-canceller: cancels DialNexa workflows named by CRM events."""
