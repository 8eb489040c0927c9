"""PageLens's programs on top of the library: ``cli/`` (the ``pagelens`` command), ``web/``
and ``streamlit_app.py`` (the Streamlit app; the entry is launched by path), ``server/`` (the
OpenAI-compatible HTTP API), ``mcp_server.py`` (the MCP server), ``warmup.py`` (deciding
the text-query weights in the background, shared by the servers and the app) and
``exposure.py`` (the one rule for where the app and the servers may listen, and with what
secret).

app may import retriever and indexer (never pagelens); among its parts, cli may import web
(the app's launcher), server and mcp_server; web and server do not import cli or each other.
"""
