"""Payment: the payment manager and its modules (the card purse first)."""
