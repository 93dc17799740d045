/* larderd: serves models over HTTP, loading each on first use (see docs/). */
#include "daemon.h"

int main(int argc, char **argv)
{
    return larder__daemon_main("larderd", argc, argv);
}
