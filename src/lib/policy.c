/* Eviction policies (see policy.h). */
#include "policy.h"

#include <string.h>

const struct larder__policy *const larder__policies[] = {NULL};

const struct larder__policy *larder__policy_find(const char *name)
{
    for (size_t i = 0; larder__policies[i]; i++)
        if (strcmp(larder__policies[i]->name, name) == 0)
            return larder__policies[i];
    return NULL;
}
