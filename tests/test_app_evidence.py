"""The evidence the app shows (AppTest): the question's words outlined on the thumbnails and
in the page dialog, the "Show matches" toggle, and an opened citation's quoted passage
outlined. "Where on this page?" (a click inside the open dialog) is in the browser test."""

from __future__ import annotations

from tests import test_app_ask
from tests.test_app_ask import ask_button, searched, texts

built_collection = test_app_ask.built_collection  # the fixtures, shared
indexed = test_app_ask.indexed

QUOTING = (
    'The page says "The Treaty of Westphalia ended the Thirty Years War in 1648" [a.pdf, p. 2].'
)


def image_urls(at) -> list[str]:
    """The media URLs of the page's images (a different picture: a different URL)."""
    return [img.url for el in at.main.image for img in el.proto.imgs]


def open_first(at):
    next(b for b in at.button if b.label == "Open").click()
    at.run()
    assert not at.exception, at.exception


def test_boxes_on_thumbnails_and_in_the_dialog(indexed):
    at = searched()
    assert at.toggle(key="show_matches").value is True
    drawn = image_urls(at)
    assert drawn
    at.toggle(key="show_matches").set_value(False)
    at.run()
    assert not at.exception, at.exception
    plain = image_urls(at)
    assert len(plain) == len(drawn)
    assert plain[0] != drawn[0]  # the best page has the question's words: it was drawn on
    at.toggle(key="show_matches").set_value(True)
    at.run()
    open_first(at)
    outlined = [c for c in texts(at.caption).splitlines() if "match(es) of the question" in c]
    best = at.session_state["results"]["hits"][0]
    assert any("Thirty" in h.text for h in best.highlights)
    assert outlined == [f"{len(best.highlights)} match(es) of the question outlined"]
    assert "1648" in texts(at.markdown)  # the dialog is the best page's


def test_dialog_follows_the_grid_toggle(indexed):
    at = searched()
    at.toggle(key="show_matches").set_value(False)
    at.run()
    open_first(at)
    assert "Matches hidden." in texts(at.caption)
    assert at.toggle(key="show_matches_page").value is False


def test_an_opened_citation_outlines_its_quote(indexed, llm_stub):
    llm_stub.answer = QUOTING
    at = searched()
    ask_button(at).click()
    at.run()
    assert not at.exception, at.exception
    next(b for b in at.button if b.label == "a.pdf · p. 2").click()
    at.run()
    assert not at.exception, at.exception
    assert "1 quoted passage(s) outlined in blue" in texts(at.caption)
    assert "match(es) of the question outlined" in texts(at.caption)
