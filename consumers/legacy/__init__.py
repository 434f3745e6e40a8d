"""The legacy adapter: seed 000's polling/callback protocol on top of the event pipeline."""
