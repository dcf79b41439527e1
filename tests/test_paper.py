"""The manuscript's generated inputs: equations from the theory engine, safe LaTeX text."""

from ldfa.figures import paper


def test_equations_come_from_the_engine():
    tex = paper._equations()
    assert r"\newcommand{\EqSaxe}{\tau \frac{\mathrm{d}u}{\mathrm{d}t} = 2 u \left(s - u\right)}" in tex
    assert r"\newcommand{\EqDeep}" in tex and "u^{\\frac{4}{3}}" in tex
    assert r"\sqrt{\lambda^{2} + 4 u^{2}}" in tex
    assert tex.count("{") == tex.count("}")


def test_labels_become_latex():
    assert paper._tex("max |L_ld - L_bp| / L(0), τ, λ, ½, 5%") == \
        r"max $|$L\_ld - L\_bp$|$ / L(0), $\tau$, $\lambda$, $\frac12$, 5\%"
