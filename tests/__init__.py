"""The test suite, by tier: unit, pg, e2e, releases; helpers shared by them."""
