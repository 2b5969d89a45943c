"""Kafka adapter, split by role; the only package that imports aiokafka.

clients (options, TLS, backoff, errors), source (the input consumer), sinks (at-least-once
and transactional writers), restore (changelog reads), topics (settings per role, admin,
record limits), readers (clients for the tools). Import from the role module.
"""
