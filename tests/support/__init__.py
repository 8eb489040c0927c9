"""Helpers the tests share, none of them a test: real servers started on free loopback ports
(``milvus_server``, ``s3_server``, ``tcp_proxy``, ``llm_stub``), PDFs made for tests
(``pdfs``), peak-memory readers (``peak_rss``), and scripts the tests run in subprocesses
(``crash_worker``, ``server_peak``, ``ray_loopback_probe``).

May import the project's packages and each other; nothing in the project imports them.
"""
