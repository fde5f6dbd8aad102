"""The dunning worker: Stripe events in, dunning cases driven, owners and the platform told."""
