"""The decision core: the health state machine, the pool, the load estimate, the policies, load
reports, and the choice of reply. Plain functions and objects of plain data, testable without
sockets or trio.

Imports: settings only. Never protocol, net, expose, processes or wiring."""
