"""The web app (Streamlit): the page's sections and the objects behind them.

``app/streamlit_app.py`` is the page entry (launched by path); it lays out these sections:
``sidebar`` (collection picker, model and embedding status, documents), ``folders`` (the
Watched folders panel), ``library`` (uploads
and their log), ``search`` (form and result grid), ``export`` (prompts for an LLM) and
``ask`` (the Ask panel). Behind them: ``session`` (cached model and collections, session
state), ``services`` (model loader, embedding job, workspace; no Streamlit), ``watching`` (the
watched folders and their watcher; no Streamlit), ``uploads``
(saving uploaded files safely), ``widgets`` (formatting helpers; no Streamlit), ``auth``
(the password gate) and ``launch`` (how ``pagelens app`` starts Streamlit privately).

This package may import app.warmup, retriever and indexer; never app.cli or app.server.
Keep this ``__init__`` empty of imports: ``python -m app.web.launch`` runs through it.
"""
