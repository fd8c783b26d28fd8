"""The directory: users, groups and entitlements."""
