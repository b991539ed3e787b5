"""Local stand-ins for the outside services rbm-relay talks to; test and demo tools only."""
