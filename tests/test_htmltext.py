"""HTML as the words it shows, once: the layout a reader sees, links with their address, and
the visible characters a token is searched in."""

from __future__ import annotations

from vmrsched import htmltext


def test_block_ends_become_lines_and_links_show_their_address() -> None:
    body = (
        "<html><body><p>Join the call:</p><div><a href='x'>ignored</a></div>"
        '<p><a href="https://vc.example.com/join?a=1&amp;b=2">Join</a> or '
        '<a href="mailto:help@example.com">help@example.com</a> '
        '<a href="sip:vmr1@video.example.com">vmr1@video.example.com</a></p>'
        "<p></p><p></p><ul><li>PIN&nbsp;1234</li></ul></body></html>"
    )
    assert htmltext.text_of(body) == (
        "Join the call:\nignored\nJoin (https://vc.example.com/join?a=1&b=2) or "
        "help@example.com vmr1@video.example.com\n\nPIN 1234\n"
    )


def test_a_token_split_by_inline_tags_and_invisible_characters_reads_whole() -> None:
    body = "PXPS:-<span>1234\u200b5678</span>&#45;abcd#"
    assert htmltext.visible(body) == "PXPS:-12345678-abcd#"


def test_every_backend_writes_the_same_text_for_one_answer() -> None:
    from vmrsched.mailbox import compose, graph_sending

    assert compose.text_of is htmltext.text_of
    assert graph_sending.text_of is htmltext.text_of
