"""Traffic: domains and routes (``routing``), what HAProxy must serve (``router``), HAProxy
itself (``haproxy``), certificates (``certificates``, ``acme``, ``renewals``) and a domain's
HTTPS redirect and HSTS (``domain_https``)."""
