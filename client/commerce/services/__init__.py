"""Commerce services as documents (paper 3.5): a workflow described, certified, downloaded and run.

A *service document* (:mod:`.document`) describes a business scenario as a sequence of the
commerce layer's blocks (offer, confirmation in the TINGUIN, order, payment, confirmation,
delivery, fair exchanges) with the evidence each step keeps and what it needs (payment modules,
the most it may ask, a card signature, anonymity). :mod:`.interpreter` runs a document with the
same blocks as the built-in workflows, which are themselves documents (:mod:`.builtin`).

A document from elsewhere is run only under a *service certificate* (:mod:`.permits`,
:mod:`.certificate`): a statement a trusted certifier signed after evaluating the document, which
says what the service may do. The interpreter enforces it at run time, whatever the document says
(:class:`.permits.Permit`). :mod:`.download` fetches a shop's service, checks it, shows it in the
TINGUIN and keeps the user's decision in the preferences.
"""
