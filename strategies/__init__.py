"""Server strategies of fedkd, one method per module, built on :mod:`strategies.base`."""
