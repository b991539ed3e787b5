"""rbm-relay: dependable RCS Business Messaging delivery on Google Cloud."""
